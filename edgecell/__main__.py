from edgecell.cli import main

if __name__ == "__main__":  # worker processes (firmware_host.decode) import this module too
    main()
