"""What the tool writes for people to read and share.

- report.py: report.html of an evaluation;  screenshot.py: the `screenshot` command;
- gallery.py, gallery_page.py: gallery.html, every test image to browse;  overlay.py: a map over its image;
- model_card.py: MODEL_CARD.md;  export.py: the `export` command.
"""
