"""At start-up a worker checks that the namespace has worldgen's search attributes
(generation/search_attributes.py), so a missing one stops it with the fix instead of failing
every start later. ``TEMPORAL_SEARCH_ATTRIBUTES=false`` turns them, and this check, off."""

import logging

from django.conf import settings
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError

from generation.search_attributes import KEYS

log = logging.getLogger(__name__)


class SearchAttributesMissing(Exception):
    """The namespace lacks one of worldgen's search attributes, or has it with another type."""


async def require_search_attributes(client: Client) -> None:
    if not settings.TEMPORAL_SEARCH_ATTRIBUTES:
        return
    namespace = settings.TEMPORAL_NAMESPACE
    try:
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    except RPCError as exc:  # e.g. an API key that may not list them: starts will say so if one is missing
        log.warning("could not check the search attributes", extra={"namespace": namespace, "error": exc.message})
        return
    have = {**listed.system_attributes, **listed.custom_attributes}
    wrong = [key for key in KEYS if have.get(key.name) != key.indexed_value_type.value]
    if wrong:
        raise SearchAttributesMissing(
            f"Temporal namespace {namespace!r} lacks worldgen's search attributes "
            f"{', '.join(key.name for key in wrong)} (or has them with another type). Create them: "
            f"{create_commands(namespace)} (Temporal Cloud: tcld, docs/OPERATIONS.md); "
            "or set TEMPORAL_SEARCH_ATTRIBUTES=false"
        )


def create_commands(namespace: str) -> str:
    """The ``temporal operator search-attribute create`` commands (one per type) for all of them."""
    types = sorted({key.indexed_value_type for key in KEYS})
    return "; ".join(
        f"temporal operator search-attribute create --namespace {namespace} "
        + " ".join(f"--name {key.name}" for key in KEYS if key.indexed_value_type == kind)
        + f" --type {kind.name.title()}"
        for kind in types
    )
