from epcache.cli import main

main()
