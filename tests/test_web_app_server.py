"""The web demo end to end: tools/web_demo.py's command line serving on a free localhost port,
called through gradio_client at /segment: the printed URL opens, three requests sent at once are
all answered, one computed at a time while the others wait with their place in the line; a bad
request is its message and the server goes on; a server path named by a client is never read."""

import contextlib
import io
import json
import threading
import time

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import vilseg_d2.app.page as page_module
from vilseg_d2.app import cli
from vilseg_d2.app.server import browser_url, serve
from vilseg_d2.errors import UserError

from helpers import TINY_CONFIG
from web_app_fixtures import (
    GRADIO_WARNINGS,
    VOCABULARY,
    app_opts,
    free_port,
    write_images,
    write_weights,
)

pytestmark = GRADIO_WARNINGS


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def server(weights):
    """tools/web_demo.py on a free port: (url, what it printed, port)."""
    port = free_port()
    argv = ["--config-file", TINY_CONFIG, "--port", str(port), "--opts", *app_opts(weights)]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        page, url = cli.main(argv, block=False)
    yield url, printed.getvalue(), port
    page.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def web(weights):
    """The same model, in this process: what the server should answer."""
    return cli.load_web_segmenter(TINY_CONFIG, app_opts(weights))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


def test_the_printed_url_opens_on_this_machine(server):
    url, printed, port = server
    assert url == f"http://127.0.0.1:{port}/"
    assert f"open {url} in a browser" in printed
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200 and "ViL-Seg" in answer.text
    # a wildcard address is no URL to open: the loopback one is printed instead
    assert browser_url("0.0.0.0", 7860) == "http://127.0.0.1:7860/"
    assert browser_url("::", 7860) == "http://[::1]:7860/"
    assert browser_url("localhost", 80) == "http://localhost:80/"


def test_a_port_in_use_is_one_message(server):
    with gr.Blocks(analytics_enabled=False) as other:
        gr.Markdown("another page")
    with pytest.raises(UserError, match=rf"Cannot serve on 127.0.0.1, port {server[2]}: "):
        serve(other, port=server[2], block=False)
    other.close()


def test_three_requests_at_once_are_answered_one_at_a_time(client, web, images, monkeypatch):
    running, most, ranks = [0], [0], []
    lock = threading.Lock()
    real = page_module.segment_request

    def counted(*args, **kwargs):  # how many run at once; slow enough for a line to form
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.5)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(page_module, "segment_request", counted)
    paths = [images["scene"], images["small"], images["rgba"]]
    jobs = [client.submit(handle_file(str(p)), VOCABULARY, api_name="/segment") for p in paths]
    deadline = time.monotonic() + 120
    while not all(job.done() for job in jobs) and time.monotonic() < deadline:
        ranks += [s.rank for s in (job.status() for job in jobs) if s.rank is not None]
        time.sleep(0.02)
    results = [job.result(timeout=60) for job in jobs]
    assert most[0] == 1  # one request computed at a time
    assert max(ranks, default=0) >= 1  # a waiting request was told its place in the line
    for path, (overlay, shares, clusters, legend, summary) in zip(paths, results):
        expected = real(web, {"path": str(path)}, VOCABULARY)
        np.testing.assert_array_equal(np.asarray(Image.open(overlay).convert("RGB")), expected[0])
        np.testing.assert_array_equal(np.asarray(Image.open(clusters).convert("RGB")), expected[2])
        assert shares == expected[1] and legend == expected[3]
        assert "Segmented" in summary


def test_settings_and_bad_requests_through_the_api(client, web, images, tmp_path):
    image = handle_file(str(images["scene"]))
    settings = {"mode": "dense", "refine": False, "bg_threshold": 0.0, "bg_global_similarity": 0}
    _, shares, *_ = client.predict(image, VOCABULARY, **settings, api_name="/segment")
    expected = page_module.segment_request(web, {"path": str(images["scene"])}, VOCABULARY,
                                           **settings)  # fmt: skip
    assert shares == expected[1] and "background" not in shares
    with pytest.raises(AppError, match="The vocabulary is empty"):
        client.predict(image, " ; ", api_name="/segment")
    text = tmp_path / "page.png"
    text.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(AppError, match=r"Cannot read the file as an image \(not an image"):
        client.predict(handle_file(str(text)), VOCABULARY, api_name="/segment")
    # the server goes on
    _, shares, *_ = client.predict(image, VOCABULARY, api_name="/segment")
    assert sum(shares.values()) == pytest.approx(1, abs=1e-4)


def test_a_server_path_named_by_a_client_is_not_read(server, tmp_path):
    """The image must be an upload: a path of the server's in the request is refused, and the
    file's content never reaches the answer."""
    url = server[0]
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for you")
    image = {"path": str(secret), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
    call = httpx.post(f"{url}gradio_api/call/segment", json={"data": [image, VOCABULARY]},
                      timeout=30)  # fmt: skip
    assert call.status_code == 200, call.text
    event = call.json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call/segment/{event}", timeout=60).text
    assert "event: error" in stream and "not for you" not in stream
    assert "secret.png" not in json.dumps(stream.split("event: error", 1)[1])
