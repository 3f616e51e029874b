"""state-tx"""
