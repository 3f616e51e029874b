"""spatial-transfer"""
