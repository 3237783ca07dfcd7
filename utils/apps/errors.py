"""The errors that mean "the user asked for something this machine or file cannot give".

They are named rather than imported: importing their modules would load torch and transformers
before a command could say, in a second, that a profile name is wrong. An error can only be one of
them when its module is already imported, so the check looks there.
"""

import errno
import sys

USER_ERRORS = {
    "utils.apps.export": "ExportError",
    "utils.data": "DataError",
    "utils.models": "ModelUnavailableError",
    "utils.plumbing.files": "DiskSpaceError",
    "utils.plumbing.hub": "HubUnreachableError",
    "utils.plumbing.out_of_memory": "OutOfMemory",
    "utils.profiles": "ProfileError",
    "utils.quantization": "QuantizationUnavailable",
}


# Writing where the user pointed failed: a read-only folder, a path under a file, a full disk.
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EEXIST, errno.ENOTDIR, errno.EDQUOT}
INTERRUPTED = ("Interrupted. Nothing finished is lost: run the same command again and it goes on from the last "
               "complete checkpoint (finished trainings and notebooks are reused).")


def user_message(error: BaseException) -> str | None:
    """The one line to print for a user's error (USER_ERRORS, or a place that cannot be written); None otherwise."""
    if is_user_error(error):
        return str(error)
    if isinstance(error, OSError) and error.errno in UNWRITABLE:
        where = error.filename or "a folder the course writes to"
        return (f"cannot write {where}: {error.strerror}. Fix: point the course at a folder you can write to "
                "(COURSE_RUNS_DIR for runs and checkpoints, COURSE_CACHE_DIR for models, or another export folder), "
                "or free some space.")
    return None


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is one of USER_ERRORS: a one-line message and exit code 2, not a traceback."""
    classes = [getattr(sys.modules[module], name) for module, name in USER_ERRORS.items() if module in sys.modules]
    return isinstance(error, tuple(classes))
