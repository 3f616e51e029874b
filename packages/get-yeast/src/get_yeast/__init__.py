"""get-yeast"""
