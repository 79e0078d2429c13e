"""How a backend's responses are read, whatever its protocol: one settings
type for the FastCGI and HTTP/1.1 transports (``fastcgi.PhpSettings`` and
``http1.HttpSettings`` are this class), built from the schema in one place."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import BackendConfig, ServerConfig


@dataclass(frozen=True, slots=True)
class ResponseSettings:
    """How one backend's responses are read. No defaults here: ``from_config``
    is the one mapping from the schema, where every default lives."""

    read_timeout: float
    max_header_size: int
    response_buffer_size: int
    temp_dir: str | None
    ignore_client_abort: bool
    #: Past response_buffer_size + this, the response is passed through at the
    #: client's pace instead of spooled (nginx fastcgi/proxy_max_temp_file_size).
    max_temp_file_size: int

    @classmethod
    def from_config(cls, backend: BackendConfig, server: ServerConfig | None = None) -> ResponseSettings:
        """The settings for ``backend``; ``server`` gives the temp dir (omitted: the default)."""
        return cls(
            read_timeout=backend.read_timeout,
            max_header_size=backend.max_response_header_size,
            response_buffer_size=backend.response_buffer_size,
            temp_dir=(server or ServerConfig()).temp_dir or None,
            ignore_client_abort=backend.ignore_client_abort,
            max_temp_file_size=backend.max_temp_file_size,
        )
