-- Credentials for the registry of an `oci://` image (Metal3's ociAuthSecretName): JSON {username, password}, sealed
-- like the BMC password. NULL: the registry is pulled from anonymously. Cleared with the image.
ALTER TABLE hosts ADD COLUMN image_credentials TEXT;
