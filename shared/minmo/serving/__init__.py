"""What every MinMo gRPC service shares: settings from the environment, the server host, limits."""
