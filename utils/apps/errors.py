"""The errors that mean "the user asked for something this machine or file cannot give".

They are named rather than imported: importing their modules would load torch and transformers
before a command could say, in a second, that a profile name is wrong. An error can only be one of
them when its module is already imported, so the check looks there.
"""

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


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is one of USER_ERRORS: a one-line message and exit code 2, not a traceback."""
    classes = [getattr(sys.modules[module], name) for module, name in USER_ERRORS.items() if module in sys.modules]
    return isinstance(error, tuple(classes))
