"""The API: the ImageService servicer (protobuf to domain and back), the generation data
plane behind it (generation_service.py), request validation, image encoding, reflection.
"""
