"""`python -m psfh.convert`: the same command as `psfh-convert` (:mod:`psfh.cli.convert`)."""

from psfh.cli.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
