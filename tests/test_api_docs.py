"""docs/api.md is generated from the protos' comments and must match them (`make protos` rewrites it)."""

from __future__ import annotations

from minmo.api.docs import DOC_PATH, render_from_protos


def test_api_reference_is_up_to_date():
    assert DOC_PATH.read_text() == render_from_protos(), "docs/api.md is stale: run `make protos`"


def test_api_reference_documents_every_service_and_the_public_api_first():
    doc = DOC_PATH.read_text()
    services = ["Conversation", "AudioEncoder", "Reasoner", "VoiceDecoder", "Vocoder"]
    positions = [doc.index(f"### service {name}") for name in services]
    assert positions[0] == min(positions), "the public Conversation API comes first"
    assert "| `end_reason` | `TurnEvent.EndReason` | 6 |" in doc
    assert "| `MAX_TOKENS` | 2 | The reply reached the server's length cap" in doc
