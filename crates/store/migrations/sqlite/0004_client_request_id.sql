-- keel's own id is each row's identity; the client's x-request-id, which clients may reuse, is kept beside it.
ALTER TABLE requests ADD COLUMN client_request_id TEXT;
CREATE INDEX requests_client_id ON requests (client_request_id);
