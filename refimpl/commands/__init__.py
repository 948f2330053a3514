"""The commands: ``obsprop`` (``cli``) and the argument parser they share (``argparsing``)."""
