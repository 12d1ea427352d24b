"""The one exception type psfh raises for bad input.

Every problem a user can cause (an unreadable file, an empty array, a data folder that is not a
labelled data set, a package that holds pickle weights) raises :class:`PSFHInputError` with a
message that names the file or argument and says what is wrong. Errors from deep inside torch
never reach the user for such input.
"""


class PSFHInputError(ValueError):
    """Bad input given to psfh: the message names the file or argument and the problem."""
