"""Telephony adapters: bridges from phone-call media streams to rechka protocol v1."""
