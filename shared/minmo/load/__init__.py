"""`minmo load`: real full-duplex sessions against a running stack, measured as a user feels them."""
