from semsim.cli import main

main()
