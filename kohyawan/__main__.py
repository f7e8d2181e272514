from kohyawan.cli import main

main()
