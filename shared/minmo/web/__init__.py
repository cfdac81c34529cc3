"""`minmo web`: the browser page (static/) and the WebSocket bridge to the Conversation API (bridge.py)."""
