-- The tax bureau's copy of business licences (MariaDB), kept by exhub's sink `tax-mirror`.
CREATE TABLE IF NOT EXISTS business_license (
  credit_code            CHAR(18) NOT NULL PRIMARY KEY,
  company_name           VARCHAR(200) NOT NULL,
  company_type           VARCHAR(50),
  legal_representative   VARCHAR(50),
  registered_capital     DECIMAL(18, 2),
  currency               VARCHAR(10),
  established_on         DATE,
  business_term_end      DATE,
  business_scope         TEXT,
  address                VARCHAR(300),
  district               VARCHAR(50),
  status                 VARCHAR(20),
  registration_authority VARCHAR(100),
  issued_on              DATE
) DEFAULT CHARSET = utf8mb4;
