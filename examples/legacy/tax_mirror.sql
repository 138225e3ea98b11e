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

-- The tax bureau's copy of social insurance enrollments, kept by the same sink. The route masks
-- gender and birth date: the tax bureau does not get them, so the table has no such columns.
CREATE TABLE IF NOT EXISTS social_security_enrollment (
  enrollment_id         VARCHAR(32) NOT NULL PRIMARY KEY,
  person_id             CHAR(18) NOT NULL,
  person_name           VARCHAR(50) NOT NULL,
  employer_credit_code  CHAR(18) NOT NULL,
  employer_name         VARCHAR(200),
  insurance_types       JSON NOT NULL,
  contribution_base     DECIMAL(12, 2) NOT NULL,
  started_on            DATE NOT NULL,
  ended_on              DATE,
  status                VARCHAR(20) NOT NULL,
  district              VARCHAR(50)
) DEFAULT CHARSET = utf8mb4;
