from edgecell.cli import main

main()
