"""Rig profiles (YAML in this folder): the rooms' settings types composed, and the one loader."""
