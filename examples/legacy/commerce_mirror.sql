-- The commerce bureau's copy of tax registrations (PostgreSQL), kept by exhub's sink
-- `commerce-mirror`. Columns are the document's field names; the key is the document's key.
CREATE TABLE IF NOT EXISTS tax_registration (
  taxpayer_id          TEXT PRIMARY KEY,
  name                 TEXT NOT NULL,
  legal_representative TEXT,
  registered_at        DATE NOT NULL,
  registration_type    TEXT NOT NULL,
  taxpayer_status      TEXT NOT NULL,
  district             TEXT NOT NULL,
  address              TEXT,
  capital              NUMERIC(18, 2),
  industry_code        TEXT,
  tax_authority        TEXT,
  phone                TEXT,
  updated_at           TIMESTAMPTZ
);
