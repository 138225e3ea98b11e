-- The Nanhai market supervision (commerce) bureau's legacy registration system (PostgreSQL):
-- the business licence table as such systems have it — short pinyin column names, codes
-- instead of words. exhub reads it through logical replication and never writes to it.
CREATE TABLE IF NOT EXISTS scjg_yyzz (
  tyshxydm CHAR(18)      PRIMARY KEY,             -- 统一社会信用代码
  qymc     VARCHAR(200)  NOT NULL,                -- 企业名称
  qylx     CHAR(4)       NOT NULL,                -- 企业类型代码
  fddbr    VARCHAR(50)   NOT NULL,                -- 法定代表人
  zczb     NUMERIC(18,2),                         -- 注册资本
  bz       CHAR(3)       NOT NULL DEFAULT 'CNY',  -- 币种
  clrq     DATE          NOT NULL,                -- 成立日期
  yyqxz    DATE,                                  -- 营业期限至 (NULL = 长期)
  jyfw     TEXT,                                  -- 经营范围 (long: TOASTed)
  zs       VARCHAR(300)  NOT NULL,                -- 住所
  ssq      VARCHAR(50),                           -- 所属区
  djzt     CHAR(1)       NOT NULL,                -- 登记状态代码
  djjg     VARCHAR(100),                          -- 登记机关
  fzrq     DATE,                                  -- 发照日期
  gxsj     TIMESTAMPTZ   NOT NULL DEFAULT now()   -- 更新时间
);
COMMENT ON TABLE scjg_yyzz IS '营业执照登记信息';
-- Long business scopes are stored out of line, uncompressed, as in the production system.
ALTER TABLE scjg_yyzz ALTER COLUMN jyfw SET STORAGE EXTERNAL;
