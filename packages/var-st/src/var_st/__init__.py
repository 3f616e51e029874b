"""var-st"""
