"""Every exception a user can provoke, in one place.

The CLI turns any `TracerError` into one line on stderr and a non-zero exit; library code
raises these and nothing else for bad input. Bad bytes *inside* a capture are not errors:
the decoder counts them as anomalies (see tracer.decode.anomalies) and goes on.
"""


class TracerError(Exception):
    """Base class: a problem the user can fix (bad path, bad file, missing tool)."""

    exit_code = 2


class CaptureOpenError(TracerError):
    """The capture could not be opened (missing, a directory, permission denied)."""


class NotACaptureError(TracerError):
    """The file does not start with a pcap, pcapng or gzip magic number."""


class UnsupportedLinkTypeError(TracerError):
    """The native decoder does not know the link type; the pyshark engine may."""


class ToolMissingError(TracerError):
    """An external program (tshark, dumpcap) is not installed or not on PATH."""


class EngineError(TracerError):
    """An external engine (tshark behind pyshark) failed while reading a capture."""


class FilterError(TracerError):
    """A --filter expression that does not parse."""
