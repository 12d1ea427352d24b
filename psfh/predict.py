"""`python -m psfh.predict`: the same command as `psfh-predict` (:mod:`psfh.cli.predict`)."""

from psfh.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
