"""Captum attribution classes of captum_elfa."""
