"""The media client against the real reference server (``python -m mediaserver``) over a real channel."""

import asyncio
import datetime
import io
import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from PIL import Image

from generation.media import (
    MediaClient,
    MediaRejected,
    MediaUnavailable,
    RenderedImage,
    channel_options,
    open_channel,
)
from localstack import servers

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "test-artifacts" / "logs"

pytestmark = pytest.mark.timeout(120)


def start_media_server(name: str, *args: str) -> tuple[servers.ManagedProcess, str]:
    port = servers.free_port()
    process = servers.start(
        name,
        [sys.executable, "-m", "mediaserver", "--port", str(port), *args],
        log_path=LOGS / f"{name}.log",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
    )
    try:
        servers.wait_for_port(process, port, timeout=30)
    except servers.StackError:
        process.kill()
        raise
    return process, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def media_target():
    process, target = start_media_server("mediaserver")
    yield target
    process.stop()


@pytest.fixture
def media_server_with():
    """Start a server with fault-injection flags for one test; stopped afterwards."""
    started: list[servers.ManagedProcess] = []

    def start(name: str, *args: str) -> tuple[servers.ManagedProcess, str]:
        process, target = start_media_server(name, *args)
        started.append(process)
        return process, target

    yield start
    for process in started:
        process.stop()


def render(target: str, timeout: float = 10.0, **overrides) -> RenderedImage:
    request = {
        "prompt": "a lighthouse on a floating island",
        "style": "watercolor, dusk",
        "seed": 42,
        "width": 320,
        "height": 240,
        "kind": "post",
        **overrides,
    }

    async def call() -> RenderedImage:
        async with grpc.aio.insecure_channel(target, options=channel_options()) as channel:
            return await MediaClient(channel).render_image(**request, timeout=timeout)

    return asyncio.run(call())


def decode(image: RenderedImage) -> Image.Image:
    decoded = Image.open(io.BytesIO(image.png))
    decoded.load()
    return decoded


def test_renders_a_png_of_the_requested_size(media_target):
    image = render(media_target, width=320, height=240)
    decoded = decode(image)
    assert decoded.format == "PNG" and decoded.size == (320, 240)
    assert (image.width, image.height, image.mime_type, image.seed) == (320, 240, "image/png", 42)
    assert image.renderer == "worldgen-procedural-renderer/1"
    assert len(decoded.getcolors(maxcolors=1_000_000) or []) > 100  # a picture, not a flat fill


def test_same_request_same_bytes_and_inputs_change_the_image(media_target):
    first = render(media_target).png
    assert render(media_target).png == first
    assert render(media_target, seed=43).png != first
    assert render(media_target, prompt="a lighthouse on a sunken island").png != first
    assert render(media_target, style="neon noir").png != first


def test_avatar_is_round_and_differs_from_post(media_target):
    avatar = render(media_target, kind="avatar", width=256, height=256)
    post = render(media_target, kind="post", width=256, height=256)
    assert avatar.png != post.png
    decoded = decode(avatar)
    assert decoded.size == (256, 256) and decoded.mode == "RGBA"
    assert decoded.getpixel((0, 0))[3] == 0 and decoded.getpixel((128, 128))[3] == 255  # round


def test_extreme_sizes(media_target):
    assert decode(render(media_target, width=16, height=16)).size == (16, 16)
    assert decode(render(media_target, kind="avatar", width=2048, height=2048, timeout=30)).size == (2048, 2048)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"width": 15}, "width must be between 16 and 2048 pixels, got 15"),
        ({"height": 4096}, "height must be between 16 and 2048 pixels, got 4096"),
        ({"kind": "video"}, "kind must be one of"),
        ({"seed": -1}, "media render rejected"),
    ],
)
def test_invalid_requests_are_rejected(media_target, overrides, message):
    with pytest.raises(MediaRejected, match=message) as caught:
        render(media_target, **overrides)
    assert "\n" not in str(caught.value)


def test_retries_unavailable_until_the_server_answers(media_server_with):
    process, target = media_server_with("mediaserver-fail-first-2", "--fail-first", "2")
    image = render(target)
    assert decode(image).size == (320, 240)
    assert process.log_path.read_text().count("injected UNAVAILABLE") == 2  # two failures, then the answer


def test_gives_up_after_four_attempts(media_server_with):
    process, target = media_server_with("mediaserver-fail-first-5", "--fail-first", "5")
    with pytest.raises(MediaUnavailable, match=r"unavailable \(UNAVAILABLE\): injected failure") as caught:
        render(target)
    assert caught.value.code == "UNAVAILABLE"
    assert process.log_path.read_text().count("injected UNAVAILABLE") == 4  # maxAttempts


def test_deadline_exceeded_is_unavailable(media_server_with):
    _, target = media_server_with("mediaserver-delay-3", "--delay", "3")
    with pytest.raises(MediaUnavailable, match=r"did not answer within 0.5s") as caught:
        render(target, timeout=0.5)
    assert caught.value.code == "DEADLINE_EXCEEDED"


def test_nothing_listening_is_unavailable():
    target = f"127.0.0.1:{servers.free_port()}"
    with pytest.raises(MediaUnavailable, match=r"unavailable \(UNAVAILABLE\)") as caught:
        render(target, timeout=10)
    assert "\n" not in str(caught.value)


def test_server_refuses_a_taken_port(media_target):
    port = media_target.rpartition(":")[2]
    process = servers.start(
        "mediaserver-taken-port",
        [sys.executable, "-m", "mediaserver", "--port", port],
        log_path=LOGS / "mediaserver-taken-port.log",
        cwd=ROOT,
    )
    assert process.popen.wait(30) != 0
    assert "cannot listen on 127.0.0.1:" in process.log_tail()


def test_the_server_listens_on_media_grpc_target_and_stops_on_sigterm():
    port = servers.free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MEDIA_GRPC_TARGET": f"127.0.0.1:{port}"}  # the default --port
    process = servers.start(
        "mediaserver-target",
        [sys.executable, "-m", "mediaserver"],
        log_path=LOGS / "mediaserver-target.log",
        env=env,
        cwd=ROOT,
    )
    try:
        servers.wait_for_port(process, port, timeout=60)
        assert decode(render(f"127.0.0.1:{port}", kind="avatar", width=64, height=64)).size == (64, 64)
        process.signal(signal.SIGTERM)
        assert process.popen.wait(30) == 0
        log = process.log_path.read_text()
        assert f"media server listening on 127.0.0.1:{port}" in log and "media server stopped" in log
    finally:
        process.stop()


# --- TLS: the worker's channel (generation.media.open_channel) to a media server serving TLS ---------------


def self_signed_certificate(directory) -> tuple[str, str]:
    """A certificate for localhost and 127.0.0.1, and its key: (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "media.crt", directory / "media.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def render_over(target: str, **channel) -> RenderedImage:
    async def call() -> RenderedImage:
        async with open_channel(target, **channel) as opened:
            return await MediaClient(opened).render_image(
                prompt="a lighthouse", style="ink", seed=1, width=64, height=64, kind="post", timeout=5
            )

    return asyncio.run(call())


def test_the_worker_s_channel_speaks_tls_to_a_media_server_that_serves_it(media_server_with, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    process, target = media_server_with("mediaserver-tls", "--tls-cert", cert, "--tls-key", key)
    assert decode(render_over(target, tls=True, ca_file=cert)).size == (64, 64)
    with pytest.raises(MediaUnavailable):
        render_over(target)  # plaintext is refused
    with pytest.raises(MediaUnavailable):
        render_over(target, tls=True)  # the system's roots do not trust this certificate
    assert "TLS" in process.log_path.read_text()


def test_tls_flags_need_both_files(tmp_path):
    cert, _ = self_signed_certificate(tmp_path)
    for args in (["--tls-cert", cert], ["--tls-cert", cert, "--tls-key", str(tmp_path / "missing.key")]):
        result = subprocess.run(
            [sys.executable, "-m", "mediaserver", "--port", "0", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0 and result.stderr.startswith("mediaserver: "), result.stderr
        assert "Traceback" not in result.stderr
