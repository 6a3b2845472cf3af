"""Optional encryption of every Temporal payload (AES-256-GCM), on when ``TEMPORAL_PAYLOAD_KEYS`` is set.

Workflow and activity inputs and results, signals, updates, queries, memos and failure messages
(``DefaultFailureConverterWithEncodedAttributes``) reach Temporal encrypted; search attributes do not
(Temporal indexes them). Each payload names its key in its metadata, so keys rotate: the first key
encrypts, every configured key decrypts. A payload without the encrypted encoding (written before
encryption was turned on) is read as it is. Web and worker share this through ``connect_client``;
the Temporal UI decodes through ``worlds.temporal_codec``. Imports nothing from Django.
"""

import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class PayloadDecryptionError(ValueError):
    """A payload could not be decrypted: unknown key ID, or it does not authenticate."""


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("EncryptionCodec needs at least one key")
        self.key_id = next(iter(keys))  # the first key encrypts
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        # The key ID is authenticated data: a payload moved under another ID does not decrypt.
        sealed = self._ciphers[self.key_id].encrypt(nonce, payload.SerializeToString(), self.key_id.encode())
        return Payload(metadata={"encoding": ENCODING, KEY_ID: self.key_id.encode()}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key ID {key_id!r}, which TEMPORAL_PAYLOAD_KEYS does not hold "
                f"(it holds {', '.join(map(repr, self._ciphers))}): add that key back to decrypt it"
            )
        try:
            plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload encrypted with key ID {key_id!r} does not authenticate: it was altered, "
                "or the key under that ID is not the one it was encrypted with"
            ) from None
        return Payload.FromString(plain)


def payload_codec(keys: Mapping[str, bytes]) -> EncryptionCodec | None:
    """The codec for these keys, or None when encryption is off (no keys)."""
    return EncryptionCodec(keys) if keys else None


def data_converter(keys: Mapping[str, bytes]) -> DataConverter:
    """Temporal's default converter, with every payload and failure message encrypted when keys are set."""
    codec = payload_codec(keys)
    if codec is None:
        return DataConverter.default
    return DataConverter(payload_codec=codec, failure_converter_class=DefaultFailureConverterWithEncodedAttributes)
