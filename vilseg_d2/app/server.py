"""Serving the page: Gradio's queue (one request computed at a time, a bounded line, each waiting
request shown its place), on 127.0.0.1 unless asked otherwise, and a printed URL that opens."""

from __future__ import annotations

import ipaddress
from typing import Optional, Union

import gradio as gr

from ..errors import UserError

__all__ = ["browser_url", "serve"]

# Requests waiting at most; more are told that the queue is full.
QUEUE_SIZE = 16
# Local fonts: the page asks no other server for anything.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
)


def _ip_address(host: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    """``host`` as an IP address ("": the wildcard 0.0.0.0), None for a host name."""
    try:
        return ipaddress.ip_address(host.strip("[]") or "0.0.0.0")
    except ValueError:
        return None


def browser_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens for a server bound to ``host``: a wildcard
    address (0.0.0.0, ::), which no browser can open, becomes the loopback address."""
    address = _ip_address(host)
    if address is None:  # a host name
        return f"http://{host}:{port}/"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{port}/"


def serve(
    page: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    share: bool = False,
    max_file_size: Optional[int] = None,
    block: bool = True,
    queue_size: int = QUEUE_SIZE,
) -> str:
    """Launch the page and print where to open it.

    Args:
        page: the Blocks of :func:`~vilseg_d2.app.page.build_page`.
        host: the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network).
        port: the port (None: the first free one from 7860).
        share: also ask Gradio for a public share link (it needs Gradio's servers).
        max_file_size: the largest upload in bytes (the server refuses larger ones).
        block: serve until interrupted (False: return at once, e.g. in a test; ``page.close()``
            stops it).
        queue_size: requests waiting at most.

    Returns:
        The local URL.

    Raises:
        UserError: the port is taken, or the address is not this machine's.
    """
    page.queue(max_size=queue_size, default_concurrency_limit=1)
    try:
        page.launch(server_name=host, server_port=port, share=share,
                    max_file_size=max_file_size, prevent_thread_lock=True, quiet=True,
                    show_error=False, theme=THEME)  # fmt: skip
    except OSError as e:
        where = f"port {port}" if port else "a port from 7860"
        raise UserError(
            f"Cannot serve on {host}, {where}: {e}. Pass another --port (or none: the first "
            "free one from 7860), or a --host of this machine."
        ) from None
    url = browser_url(host, page.server_port)
    print(f"ViL-Seg web demo: open {url} in a browser (Ctrl+C stops it).", flush=True)
    address = _ip_address(host)
    if address is not None and address.is_unspecified:
        print(f"Listening on every network: other machines open http://<this machine>:"
              f"{page.server_port}/.", flush=True)  # fmt: skip
    if share:
        print(f"Public link: {page.share_url or 'none (Gradio could not create one)'}", flush=True)
    if block:
        page.block_thread()
    return url
