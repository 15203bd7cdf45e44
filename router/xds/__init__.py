"""Envoy's control plane: the registry mirror turned into xDS resources (see README "Envoy")."""
