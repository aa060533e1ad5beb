"""Default YAML configuration shipped with surveydust (installed as ``surveydust.configs``)."""
