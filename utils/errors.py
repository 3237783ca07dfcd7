"""The errors that mean "the user asked for something this machine or file cannot give"."""

from utils.data import DataError
from utils.files import DiskSpaceError
from utils.hub import HubUnreachableError
from utils.models import ModelUnavailableError
from utils.profiles import ProfileError
from utils.quantization import QuantizationUnavailable

USER_ERRORS = (DataError, DiskSpaceError, HubUnreachableError, ModelUnavailableError, ProfileError,
               QuantizationUnavailable)
