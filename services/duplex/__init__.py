"""duplex service."""
