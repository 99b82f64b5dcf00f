"""Dialogs and widgets. Built once, signals connected in Python, no heavy work on the GUI thread."""
