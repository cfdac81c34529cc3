"""Kubernetes tooling: the Helm chart's values schema and a health report of a running release."""
