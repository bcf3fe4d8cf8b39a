"""Certificates for the balancer."""
