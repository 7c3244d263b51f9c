"""Images and image folders: one loader for every command."""

from convlens.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, list_images, load_image

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "list_images", "load_image"]
