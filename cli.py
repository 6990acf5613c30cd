"""Run the facesearch CLI from a checkout: ``python cli.py --help``."""

from facesearch.cli import main

if __name__ == "__main__":
    main()
