"""The model organism's world (``world``): the gendered-pronoun corpus the bundled models were trained on, with
its ground truth. ``refimpl.organism.<name>`` keeps working for every public name of ``world``."""

from refimpl.organism.world import *  # noqa: F401,F403
