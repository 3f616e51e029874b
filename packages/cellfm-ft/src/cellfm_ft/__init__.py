"""cellfm-ft"""
