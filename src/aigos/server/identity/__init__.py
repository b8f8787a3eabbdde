"""Identity: the agent registry, agent credentials, signing keys and the OAuth 2.0 server for agents."""
