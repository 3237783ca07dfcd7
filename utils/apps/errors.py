"""The errors that mean "the user asked for something this machine or file cannot give"."""

from utils.apps.export import ExportError
from utils.data import DataError
from utils.models import ModelUnavailableError
from utils.plumbing.files import DiskSpaceError
from utils.plumbing.hub import HubUnreachableError
from utils.profiles import ProfileError
from utils.quantization import QuantizationUnavailable

USER_ERRORS = (DataError, DiskSpaceError, ExportError, HubUnreachableError, ModelUnavailableError, ProfileError,
               QuantizationUnavailable)
