"""Placeholder until its issue lands: says so instead of pretending to work."""
import sys

sys.exit('vis_img_preprocessing.py is not implemented yet (see the open issues); nothing was done.')
