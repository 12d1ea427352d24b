"""`python -m psfh.data`: the same command as `psfh-data` (:mod:`psfh.cli.data`)."""

from psfh.cli.data import main

if __name__ == "__main__":
    raise SystemExit(main())
