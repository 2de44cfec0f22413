"""``python -m gendistill ...`` is the ``gendistill`` command (for machines where the console script is not on PATH)."""

from gendistill.cli import main

if __name__ == "__main__":
    main()
