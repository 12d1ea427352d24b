"""`python -m psfh.evaluate`: the same command as `psfh-evaluate` (:mod:`psfh.cli.evaluate`)."""

from psfh.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
