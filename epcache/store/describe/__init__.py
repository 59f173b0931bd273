"""What a store holds, in words: `epcache info` and `epcache ls`, storage sizes, how two stores differ."""
